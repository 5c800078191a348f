"""`python -m rqscale.convert`: other people's checkpoints as rqscale's files.

  official   the authors' released RQ-VAE and RQ-Transformer (kakaobrain/rq-vae-transformer): rqscale/convert/official.py
"""
