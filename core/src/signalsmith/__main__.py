from signalsmith.cli import main

main()
