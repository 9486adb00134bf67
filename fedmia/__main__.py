from fedmia.experiment.cli import main

main()
