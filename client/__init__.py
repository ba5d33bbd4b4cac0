"""Python clients for the ZTB broker."""
