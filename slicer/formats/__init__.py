"""What lives on disk: checkpoint key maps, subnet folders, adapter stacks, reorderings, prepared teachers."""
