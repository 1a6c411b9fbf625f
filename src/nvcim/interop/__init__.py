"""Interoperability with other tools; each module imports its tool lazily, so nvcim works without them.

    aihwkit.py   IBM's aihwkit (optional extra): its inference noise models as device models, analog models in/out
"""
