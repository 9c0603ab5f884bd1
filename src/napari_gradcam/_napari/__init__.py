"""The napari skin: the only subpackage that imports napari or Qt."""
