"""flower-app: a Flower app on scikit-learn's digits whose server records its view for fedmia."""
