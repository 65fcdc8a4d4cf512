"""survival3d.data"""
