"""VAEs with implicit encoders whose entropy is trained through score estimates
(paper Sec. 6, Table 2).

  networks     MLP encoders (Gaussian, implicit), decoder, score net (MNIST)
  model        `VAE`: encode (reparameterized), decode, log p(x | z); `build_vae`
  objectives   log prior, likelihoods, Gaussian KL/entropy, the entropy surrogate
  kernel       Stein and Spectral score estimators
  estimators   one interface for csm, ssm_ar, ssm, stein, spectral
  loss         Gaussian ELBO, implicit-encoder loss, the score model's fit loss
  optim        RMSProp as PyTorch's defaults
  data         train/validation split, dynamic binarization keyed by (seed, step)
  train        `VAEState`, the jitted step, the training loop with checkpoints
  evaluate     AIS test NLL, samples, restore; --mode=eval|sample
"""
