"""``python -m datamodules OUT [--dataset NAME] [--num N]``: write a dataset as an image folder."""

from datamodules.folder import main

if __name__ == "__main__":
    raise SystemExit(main())
