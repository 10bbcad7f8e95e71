from mammolab.cli import main

main()
