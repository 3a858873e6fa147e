"""A typed driver of the packer CLI (machine-readable output, the manifest's JSON), and the AMI
builds of packer/ on top of it. Imported only by `archctl ami`.

Not python-packer: unmaintained since 2017, written against Packer 0.7, crashes on any error
under Python 3 and cannot drive HCL2 builds (docs/bake-an-ami.md).
"""
