"""OCI registries: image references, the distribution API client, auth, and package images.

`bincache.mirror.oci.OciCache` builds the build cache interface on top of these.
"""
