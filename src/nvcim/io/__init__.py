"""Files nvcim writes and reads that are not results: checkpoints (checkpoint.py) and the small atomic
file helpers every writer uses (files.py). Result files have their own owner: nvcim.evaluate.files."""
