"""Network definitions that torchvision does not have; gnp.models names them (and torchvision's)."""
