from sdlab.cli import main

main()
