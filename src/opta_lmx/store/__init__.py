"""The model store: models on disk (inventory), brought from a hub (pull), made from GGUF files or
Hugging Face directories (convert), removed (remove), and the default model.

Modules that import mlx (``convert``, ``gguf_import``) run only in command-line processes; the
supervisor reaches the store through ``local.LocalStore`` (``inventory``, ``pull``, ``remove``),
which reads headers, moves bytes and deletes files, and imports neither mlx nor numpy.
"""

# Written into every directory the GGUF importer makes: what it was made from, and by which
# version of the importer (a newer version re-imports the default model).
IMPORT_RECORD = "opta-lmx-import.json"
IMPORTER_VERSION = 1
