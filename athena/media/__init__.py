"""Images and video in and out, and the metadata they carry."""
