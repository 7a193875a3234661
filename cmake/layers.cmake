# The layers of DESIGN.md §1 as the build enforces them: the one table
# cmake/check_layers.cmake reads. An include may point down this table or
# stay inside its own module, never up or across. Change a rule here, in
# DESIGN.md §1 and in the module's target_link_libraries together.

# Every module folder, bottom first.
set(BT_LAYER_MODULES common schedules kernels checkpoint worker launcher)

# BT_LAYER_<module>: the other modules its files may include. This is the
# "may include" column of DESIGN.md §1 and the link lines of the modules'
# CMakeLists.txt: schedules and checkpoint never include each other; the
# supervisor (launcher/) never includes kernels or worker.
set(BT_LAYER_common "")
set(BT_LAYER_schedules common)
set(BT_LAYER_kernels common)
set(BT_LAYER_checkpoint common)
set(BT_LAYER_worker schedules kernels checkpoint common)
set(BT_LAYER_launcher schedules checkpoint common)

# One file may include one header past its module's rule, as FILE:HEADER.
# launcher/main.c is the `baton` entry point: it alone sees worker/'s entry
# header (it is linked into the executable, not into bt_launcher).
set(BT_LAYER_EXCEPTIONS "launcher/main.c:worker/cmd.h")

# Folders above every module: they may include everything (so they are not
# scanned), and no module may include them.
set(BT_LAYER_TOP tests bench fuzz)
