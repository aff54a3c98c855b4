"""Engines are plug-ins with one contract, ``base.Engine``; one module per engine."""
