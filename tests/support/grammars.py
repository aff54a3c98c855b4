"""A Lark grammar in the shape of Codex's ``apply_patch`` tool, and a regular expression of the
same language, written apart, to check outputs against.

Names and lines are bounded so that a random-weight model reaches the grammar's end long before
any token limit (the unbounded grammar lets it write one line forever).
"""

from __future__ import annotations

import re

PATCH_GRAMMAR = r"""start: begin_patch hunk{1,2} end_patch
begin_patch: "*** Begin Patch" LF
end_patch: "*** End Patch" LF?
hunk: add_hunk | delete_hunk
add_hunk: "*** Add File: " filename LF add_line{1,3}
delete_hunk: "*** Delete File: " filename LF
filename: /[a-z]{1,8}\.txt/
add_line: "+" /[a-z ]{0,12}/ LF -> line
%import common.LF
"""
PATCH = re.compile(
    r"\*\*\* Begin Patch\n"
    r"(?:\*\*\* Add File: [a-z]{1,8}\.txt\n(?:\+[a-z ]{0,12}\n){1,3}|\*\*\* Delete File: [a-z]{1,8}\.txt\n){1,2}"
    r"\*\*\* End Patch\n?"
)
