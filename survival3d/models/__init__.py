"""survival3d.models"""
