"""The container's filesystem in a checkpoint: the overlay's upper layer captured as an OCI
layer tar (capture), applied to a new rootfs under the archive policy (apply, policy) with a
journal that rolls it back (journal, lower, reset). filesystem.py is the entry point; this
package imports nothing outside itself."""
