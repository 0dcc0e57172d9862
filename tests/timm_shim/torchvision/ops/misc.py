from torchvision import unavailable


def __getattr__(name):
    return unavailable(__name__, name)
