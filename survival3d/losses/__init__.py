"""survival3d.losses"""
