"""A plugin whose import fails, as one with a missing dependency would."""

raise ImportError("adaptrix_broken_plugin needs the package 'not-installed-anywhere'")
