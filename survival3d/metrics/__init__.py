"""survival3d.metrics"""
