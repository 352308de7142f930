"""Relocation of an extracted prefix: :mod:`.plan` (buildinfo, text and binary plans,
applying them) and :mod:`.elf` (ELF string fields, in place or grown through patchelf)."""
