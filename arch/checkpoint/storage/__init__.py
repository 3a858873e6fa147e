"""Where images live: atomic publication, removal and recovery (store), every access confined
beneath the storage root's descriptor (beneath), writers' leases and readers' markers that keep
an image in use from being removed, the leftover sweep, and pools of images that replicas
claim."""
