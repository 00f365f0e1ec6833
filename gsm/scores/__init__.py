"""Score models: linear s(y) = −A y (`linear`), Fourier-diagonal (`fourier`), neural (`nets`)."""
