"""survival3d.bench"""
