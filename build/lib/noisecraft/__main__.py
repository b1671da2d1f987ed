from noisecraft.cli import main

main()
