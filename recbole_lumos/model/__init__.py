"""SASRec-family models (CL4SRec, LUMOS), their augmentations and losses, and the name registry."""

from recbole_lumos.model.cl4srec import CL4SRec

__all__ = ["CL4SRec"]
