"""``python -m factorch ...`` (also ``torchrun -m factorch ...``) runs the command line."""
from factorch.cli.main import main

main()
