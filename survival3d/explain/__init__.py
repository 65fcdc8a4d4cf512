"""survival3d.explain"""
