"""The method's stages, each a config and its functions: SD-CAM, graph cut, ARM, SGRM."""
