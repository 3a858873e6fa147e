"""A checkpoint image and what makes it trustworthy: its metadata.json format, the checks an
untrusted image passes before a restore (validation), its signature, the decoding of CRIU's
process images, and the job identity and container-image fingerprint it is bound to."""
