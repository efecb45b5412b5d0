"""Data under training and research: decoding, Shapes, CIFAR files, image folders, zips, held-out sets, loaders."""
