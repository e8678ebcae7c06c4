"""Vision models and data: ``timm:NAME`` and ``torchvision:NAME`` teachers and students
(``models``), image transfer sets (``images``: an image folder, or a uint8 (N, H, W, 3) array)
and their recorded preprocessing (``preprocess``).

timm and torchvision are the optional extra ``softlabels[vision]``; they are imported only
when a vision SPEC is used, through ``_imports``. This package imports nothing on import.
"""
