"""Every measurement of synthetic faces: set metrics, per-image scores, the filter's decisions, Inception, LPIPS, CAS."""
