from selu_lightning.cli import main

main()
