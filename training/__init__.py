"""Training of the SD-CAM heads on frozen backbone features."""
