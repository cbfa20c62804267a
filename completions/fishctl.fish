# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_fishctl_global_optspecs
    string join \n config= context= h/help V/version
end

function __fish_fishctl_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_fishctl_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_fishctl_using_subcommand
    set -l cmd (__fish_fishctl_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c fishctl -n "__fish_fishctl_needs_command" -l config -d 'Config file [default: $FISHCTL_CONFIG, else ~/.config/fishctl/config.yaml]' -r -F
complete -c fishctl -n "__fish_fishctl_needs_command" -l context -d 'Context of the config file to use instead of its current_context' -r
complete -c fishctl -n "__fish_fishctl_needs_command" -s h -l help -d 'Print help'
complete -c fishctl -n "__fish_fishctl_needs_command" -s V -l version -d 'Print version'
complete -c fishctl -n "__fish_fishctl_needs_command" -f -a "apply" -d 'Create or update labels, applications and users from manifests'
complete -c fishctl -n "__fish_fishctl_needs_command" -f -a "get" -d 'List objects of a kind, or show one; --watch follows changes'
complete -c fishctl -n "__fish_fishctl_needs_command" -f -a "describe" -d 'Show one object in detail'
complete -c fishctl -n "__fish_fishctl_needs_command" -f -a "deallocate" -d 'Ask fishd to release the resources of applications'
complete -c fishctl -n "__fish_fishctl_needs_command" -f -a "delete" -d 'Delete a label or a user, or deallocate an application'
complete -c fishctl -n "__fish_fishctl_needs_command" -f -a "create" -d 'Create a user (prints its token once) or a cluster join token'
complete -c fishctl -n "__fish_fishctl_needs_command" -f -a "maintenance" -d 'Put a node into maintenance (no new applications) or take it out'
complete -c fishctl -n "__fish_fishctl_needs_command" -f -a "logs" -d 'Print the output of an application\'s resource'
complete -c fishctl -n "__fish_fishctl_needs_command" -f -a "whoami" -d 'Show the user the current context authenticates as'
complete -c fishctl -n "__fish_fishctl_needs_command" -f -a "version" -d 'Print the fishctl version'
complete -c fishctl -n "__fish_fishctl_needs_command" -f -a "completions" -d 'Print a shell completion script'
complete -c fishctl -n "__fish_fishctl_needs_command" -f -a "config" -d 'Show or switch contexts of the config file'
complete -c fishctl -n "__fish_fishctl_needs_command" -f -a "diff" -d 'Show what apply would change, as a unified diff (exit 0: none, 1: changes, >1: error)'
complete -c fishctl -n "__fish_fishctl_needs_command" -f -a "backup" -d 'Save a consistent backup of the whole store (admin); restore with `fishd restore`'
complete -c fishctl -n "__fish_fishctl_needs_command" -f -a "rotate" -d 'Make a new API token for yourself (updates the config file), or for USER as admin'
complete -c fishctl -n "__fish_fishctl_needs_command" -f -a "top" -d 'Show capacity used of total, allocated applications and queue per node'
complete -c fishctl -n "__fish_fishctl_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c fishctl -n "__fish_fishctl_using_subcommand apply" -s f -l filename -d 'Manifest file, directory (*.yaml, *.yml, *.json) or - for stdin; may be repeated' -r -F
complete -c fishctl -n "__fish_fishctl_using_subcommand apply" -l applyset -d 'Record the labels and users applied as members of this applyset (admin)' -r
complete -c fishctl -n "__fish_fishctl_using_subcommand apply" -l timeout -d 'How long --wait waits' -r
complete -c fishctl -n "__fish_fishctl_using_subcommand apply" -l config -d 'Config file [default: $FISHCTL_CONFIG, else ~/.config/fishctl/config.yaml]' -r -F
complete -c fishctl -n "__fish_fishctl_using_subcommand apply" -l context -d 'Context of the config file to use instead of its current_context' -r
complete -c fishctl -n "__fish_fishctl_using_subcommand apply" -s R -l recursive -d 'Also read the subdirectories of a directory'
complete -c fishctl -n "__fish_fishctl_using_subcommand apply" -l prune -d 'Delete labels and users of the applyset that are no longer in the files'
complete -c fishctl -n "__fish_fishctl_using_subcommand apply" -l dry-run -d 'Check everything and print what would happen; nothing is written'
complete -c fishctl -n "__fish_fishctl_using_subcommand apply" -l wait -d 'Wait until every applied application is ALLOCATED'
complete -c fishctl -n "__fish_fishctl_using_subcommand apply" -s h -l help -d 'Print help'
complete -c fishctl -n "__fish_fishctl_using_subcommand get" -s o -l output -d 'Output format' -r -f -a "table\t''
wide\t''
yaml\t''
json\t''
name\t''"
complete -c fishctl -n "__fish_fishctl_using_subcommand get" -l phase -d 'Applications only: show those in this phase' -r
complete -c fishctl -n "__fish_fishctl_using_subcommand get" -l label -d 'Applications only: show those of this label' -r
complete -c fishctl -n "__fish_fishctl_using_subcommand get" -l config -d 'Config file [default: $FISHCTL_CONFIG, else ~/.config/fishctl/config.yaml]' -r -F
complete -c fishctl -n "__fish_fishctl_using_subcommand get" -l context -d 'Context of the config file to use instead of its current_context' -r
complete -c fishctl -n "__fish_fishctl_using_subcommand get" -s w -l watch -d 'Keep running and show changes as they happen'
complete -c fishctl -n "__fish_fishctl_using_subcommand get" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c fishctl -n "__fish_fishctl_using_subcommand describe" -l config -d 'Config file [default: $FISHCTL_CONFIG, else ~/.config/fishctl/config.yaml]' -r -F
complete -c fishctl -n "__fish_fishctl_using_subcommand describe" -l context -d 'Context of the config file to use instead of its current_context' -r
complete -c fishctl -n "__fish_fishctl_using_subcommand describe" -s h -l help -d 'Print help'
complete -c fishctl -n "__fish_fishctl_using_subcommand deallocate" -l timeout -d 'How long --wait waits' -r
complete -c fishctl -n "__fish_fishctl_using_subcommand deallocate" -l config -d 'Config file [default: $FISHCTL_CONFIG, else ~/.config/fishctl/config.yaml]' -r -F
complete -c fishctl -n "__fish_fishctl_using_subcommand deallocate" -l context -d 'Context of the config file to use instead of its current_context' -r
complete -c fishctl -n "__fish_fishctl_using_subcommand deallocate" -l wait -d 'Wait until every one is DEALLOCATED'
complete -c fishctl -n "__fish_fishctl_using_subcommand deallocate" -s h -l help -d 'Print help'
complete -c fishctl -n "__fish_fishctl_using_subcommand delete" -l version -d 'Labels only: delete this version instead of every version' -r
complete -c fishctl -n "__fish_fishctl_using_subcommand delete" -l config -d 'Config file [default: $FISHCTL_CONFIG, else ~/.config/fishctl/config.yaml]' -r -F
complete -c fishctl -n "__fish_fishctl_using_subcommand delete" -l context -d 'Context of the config file to use instead of its current_context' -r
complete -c fishctl -n "__fish_fishctl_using_subcommand delete" -s h -l help -d 'Print help'
complete -c fishctl -n "__fish_fishctl_using_subcommand create; and not __fish_seen_subcommand_from user join-token help" -l config -d 'Config file [default: $FISHCTL_CONFIG, else ~/.config/fishctl/config.yaml]' -r -F
complete -c fishctl -n "__fish_fishctl_using_subcommand create; and not __fish_seen_subcommand_from user join-token help" -l context -d 'Context of the config file to use instead of its current_context' -r
complete -c fishctl -n "__fish_fishctl_using_subcommand create; and not __fish_seen_subcommand_from user join-token help" -s h -l help -d 'Print help'
complete -c fishctl -n "__fish_fishctl_using_subcommand create; and not __fish_seen_subcommand_from user join-token help" -f -a "user" -d 'Create a user and print its API token (shown this once)'
complete -c fishctl -n "__fish_fishctl_using_subcommand create; and not __fish_seen_subcommand_from user join-token help" -f -a "join-token" -d 'Create a one-time token for a new node to join the cluster (prints it alone)'
complete -c fishctl -n "__fish_fishctl_using_subcommand create; and not __fish_seen_subcommand_from user join-token help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c fishctl -n "__fish_fishctl_using_subcommand create; and __fish_seen_subcommand_from user" -l role -d 'Its role' -r -f -a "admin\t''
user\t''"
complete -c fishctl -n "__fish_fishctl_using_subcommand create; and __fish_seen_subcommand_from user" -l config -d 'Config file [default: $FISHCTL_CONFIG, else ~/.config/fishctl/config.yaml]' -r -F
complete -c fishctl -n "__fish_fishctl_using_subcommand create; and __fish_seen_subcommand_from user" -l context -d 'Context of the config file to use instead of its current_context' -r
complete -c fishctl -n "__fish_fishctl_using_subcommand create; and __fish_seen_subcommand_from user" -s h -l help -d 'Print help'
complete -c fishctl -n "__fish_fishctl_using_subcommand create; and __fish_seen_subcommand_from join-token" -l ttl -d 'How long it may be used (e.g. 30m, 1h, 2d; at most 7d)' -r
complete -c fishctl -n "__fish_fishctl_using_subcommand create; and __fish_seen_subcommand_from join-token" -l config -d 'Config file [default: $FISHCTL_CONFIG, else ~/.config/fishctl/config.yaml]' -r -F
complete -c fishctl -n "__fish_fishctl_using_subcommand create; and __fish_seen_subcommand_from join-token" -l context -d 'Context of the config file to use instead of its current_context' -r
complete -c fishctl -n "__fish_fishctl_using_subcommand create; and __fish_seen_subcommand_from join-token" -s h -l help -d 'Print help'
complete -c fishctl -n "__fish_fishctl_using_subcommand create; and __fish_seen_subcommand_from help" -f -a "user" -d 'Create a user and print its API token (shown this once)'
complete -c fishctl -n "__fish_fishctl_using_subcommand create; and __fish_seen_subcommand_from help" -f -a "join-token" -d 'Create a one-time token for a new node to join the cluster (prints it alone)'
complete -c fishctl -n "__fish_fishctl_using_subcommand create; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c fishctl -n "__fish_fishctl_using_subcommand maintenance" -l config -d 'Config file [default: $FISHCTL_CONFIG, else ~/.config/fishctl/config.yaml]' -r -F
complete -c fishctl -n "__fish_fishctl_using_subcommand maintenance" -l context -d 'Context of the config file to use instead of its current_context' -r
complete -c fishctl -n "__fish_fishctl_using_subcommand maintenance" -s h -l help -d 'Print help'
complete -c fishctl -n "__fish_fishctl_using_subcommand logs" -l config -d 'Config file [default: $FISHCTL_CONFIG, else ~/.config/fishctl/config.yaml]' -r -F
complete -c fishctl -n "__fish_fishctl_using_subcommand logs" -l context -d 'Context of the config file to use instead of its current_context' -r
complete -c fishctl -n "__fish_fishctl_using_subcommand logs" -s f -l follow -d 'Keep printing new output until the resource ends'
complete -c fishctl -n "__fish_fishctl_using_subcommand logs" -s h -l help -d 'Print help'
complete -c fishctl -n "__fish_fishctl_using_subcommand whoami" -l config -d 'Config file [default: $FISHCTL_CONFIG, else ~/.config/fishctl/config.yaml]' -r -F
complete -c fishctl -n "__fish_fishctl_using_subcommand whoami" -l context -d 'Context of the config file to use instead of its current_context' -r
complete -c fishctl -n "__fish_fishctl_using_subcommand whoami" -s h -l help -d 'Print help'
complete -c fishctl -n "__fish_fishctl_using_subcommand version" -l config -d 'Config file [default: $FISHCTL_CONFIG, else ~/.config/fishctl/config.yaml]' -r -F
complete -c fishctl -n "__fish_fishctl_using_subcommand version" -l context -d 'Context of the config file to use instead of its current_context' -r
complete -c fishctl -n "__fish_fishctl_using_subcommand version" -s h -l help -d 'Print help'
complete -c fishctl -n "__fish_fishctl_using_subcommand completions" -l config -d 'Config file [default: $FISHCTL_CONFIG, else ~/.config/fishctl/config.yaml]' -r -F
complete -c fishctl -n "__fish_fishctl_using_subcommand completions" -l context -d 'Context of the config file to use instead of its current_context' -r
complete -c fishctl -n "__fish_fishctl_using_subcommand completions" -s h -l help -d 'Print help'
complete -c fishctl -n "__fish_fishctl_using_subcommand config; and not __fish_seen_subcommand_from get-contexts use-context current-context help" -l config -d 'Config file [default: $FISHCTL_CONFIG, else ~/.config/fishctl/config.yaml]' -r -F
complete -c fishctl -n "__fish_fishctl_using_subcommand config; and not __fish_seen_subcommand_from get-contexts use-context current-context help" -l context -d 'Context of the config file to use instead of its current_context' -r
complete -c fishctl -n "__fish_fishctl_using_subcommand config; and not __fish_seen_subcommand_from get-contexts use-context current-context help" -s h -l help -d 'Print help'
complete -c fishctl -n "__fish_fishctl_using_subcommand config; and not __fish_seen_subcommand_from get-contexts use-context current-context help" -f -a "get-contexts" -d 'List the contexts of the config file'
complete -c fishctl -n "__fish_fishctl_using_subcommand config; and not __fish_seen_subcommand_from get-contexts use-context current-context help" -f -a "use-context" -d 'Make a context the current one'
complete -c fishctl -n "__fish_fishctl_using_subcommand config; and not __fish_seen_subcommand_from get-contexts use-context current-context help" -f -a "current-context" -d 'Print the name of the current context'
complete -c fishctl -n "__fish_fishctl_using_subcommand config; and not __fish_seen_subcommand_from get-contexts use-context current-context help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c fishctl -n "__fish_fishctl_using_subcommand config; and __fish_seen_subcommand_from get-contexts" -l config -d 'Config file [default: $FISHCTL_CONFIG, else ~/.config/fishctl/config.yaml]' -r -F
complete -c fishctl -n "__fish_fishctl_using_subcommand config; and __fish_seen_subcommand_from get-contexts" -l context -d 'Context of the config file to use instead of its current_context' -r
complete -c fishctl -n "__fish_fishctl_using_subcommand config; and __fish_seen_subcommand_from get-contexts" -s h -l help -d 'Print help'
complete -c fishctl -n "__fish_fishctl_using_subcommand config; and __fish_seen_subcommand_from use-context" -l config -d 'Config file [default: $FISHCTL_CONFIG, else ~/.config/fishctl/config.yaml]' -r -F
complete -c fishctl -n "__fish_fishctl_using_subcommand config; and __fish_seen_subcommand_from use-context" -l context -d 'Context of the config file to use instead of its current_context' -r
complete -c fishctl -n "__fish_fishctl_using_subcommand config; and __fish_seen_subcommand_from use-context" -s h -l help -d 'Print help'
complete -c fishctl -n "__fish_fishctl_using_subcommand config; and __fish_seen_subcommand_from current-context" -l config -d 'Config file [default: $FISHCTL_CONFIG, else ~/.config/fishctl/config.yaml]' -r -F
complete -c fishctl -n "__fish_fishctl_using_subcommand config; and __fish_seen_subcommand_from current-context" -l context -d 'Context of the config file to use instead of its current_context' -r
complete -c fishctl -n "__fish_fishctl_using_subcommand config; and __fish_seen_subcommand_from current-context" -s h -l help -d 'Print help'
complete -c fishctl -n "__fish_fishctl_using_subcommand config; and __fish_seen_subcommand_from help" -f -a "get-contexts" -d 'List the contexts of the config file'
complete -c fishctl -n "__fish_fishctl_using_subcommand config; and __fish_seen_subcommand_from help" -f -a "use-context" -d 'Make a context the current one'
complete -c fishctl -n "__fish_fishctl_using_subcommand config; and __fish_seen_subcommand_from help" -f -a "current-context" -d 'Print the name of the current context'
complete -c fishctl -n "__fish_fishctl_using_subcommand config; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c fishctl -n "__fish_fishctl_using_subcommand diff" -s f -l filename -d 'Manifest file, directory (*.yaml, *.yml, *.json) or - for stdin; may be repeated' -r -F
complete -c fishctl -n "__fish_fishctl_using_subcommand diff" -l applyset -d 'Record the labels and users applied as members of this applyset (admin)' -r
complete -c fishctl -n "__fish_fishctl_using_subcommand diff" -l config -d 'Config file [default: $FISHCTL_CONFIG, else ~/.config/fishctl/config.yaml]' -r -F
complete -c fishctl -n "__fish_fishctl_using_subcommand diff" -l context -d 'Context of the config file to use instead of its current_context' -r
complete -c fishctl -n "__fish_fishctl_using_subcommand diff" -s R -l recursive -d 'Also read the subdirectories of a directory'
complete -c fishctl -n "__fish_fishctl_using_subcommand diff" -l prune -d 'Delete labels and users of the applyset that are no longer in the files'
complete -c fishctl -n "__fish_fishctl_using_subcommand diff" -s h -l help -d 'Print help'
complete -c fishctl -n "__fish_fishctl_using_subcommand backup" -s o -l output -d 'Where to write it (- for stdout)' -r -F
complete -c fishctl -n "__fish_fishctl_using_subcommand backup" -l config -d 'Config file [default: $FISHCTL_CONFIG, else ~/.config/fishctl/config.yaml]' -r -F
complete -c fishctl -n "__fish_fishctl_using_subcommand backup" -l context -d 'Context of the config file to use instead of its current_context' -r
complete -c fishctl -n "__fish_fishctl_using_subcommand backup" -s h -l help -d 'Print help'
complete -c fishctl -n "__fish_fishctl_using_subcommand rotate" -l config -d 'Config file [default: $FISHCTL_CONFIG, else ~/.config/fishctl/config.yaml]' -r -F
complete -c fishctl -n "__fish_fishctl_using_subcommand rotate" -l context -d 'Context of the config file to use instead of its current_context' -r
complete -c fishctl -n "__fish_fishctl_using_subcommand rotate" -s h -l help -d 'Print help'
complete -c fishctl -n "__fish_fishctl_using_subcommand top" -l config -d 'Config file [default: $FISHCTL_CONFIG, else ~/.config/fishctl/config.yaml]' -r -F
complete -c fishctl -n "__fish_fishctl_using_subcommand top" -l context -d 'Context of the config file to use instead of its current_context' -r
complete -c fishctl -n "__fish_fishctl_using_subcommand top" -s h -l help -d 'Print help'
complete -c fishctl -n "__fish_fishctl_using_subcommand help; and not __fish_seen_subcommand_from apply get describe deallocate delete create maintenance logs whoami version completions config diff backup rotate top help" -f -a "apply" -d 'Create or update labels, applications and users from manifests'
complete -c fishctl -n "__fish_fishctl_using_subcommand help; and not __fish_seen_subcommand_from apply get describe deallocate delete create maintenance logs whoami version completions config diff backup rotate top help" -f -a "get" -d 'List objects of a kind, or show one; --watch follows changes'
complete -c fishctl -n "__fish_fishctl_using_subcommand help; and not __fish_seen_subcommand_from apply get describe deallocate delete create maintenance logs whoami version completions config diff backup rotate top help" -f -a "describe" -d 'Show one object in detail'
complete -c fishctl -n "__fish_fishctl_using_subcommand help; and not __fish_seen_subcommand_from apply get describe deallocate delete create maintenance logs whoami version completions config diff backup rotate top help" -f -a "deallocate" -d 'Ask fishd to release the resources of applications'
complete -c fishctl -n "__fish_fishctl_using_subcommand help; and not __fish_seen_subcommand_from apply get describe deallocate delete create maintenance logs whoami version completions config diff backup rotate top help" -f -a "delete" -d 'Delete a label or a user, or deallocate an application'
complete -c fishctl -n "__fish_fishctl_using_subcommand help; and not __fish_seen_subcommand_from apply get describe deallocate delete create maintenance logs whoami version completions config diff backup rotate top help" -f -a "create" -d 'Create a user (prints its token once) or a cluster join token'
complete -c fishctl -n "__fish_fishctl_using_subcommand help; and not __fish_seen_subcommand_from apply get describe deallocate delete create maintenance logs whoami version completions config diff backup rotate top help" -f -a "maintenance" -d 'Put a node into maintenance (no new applications) or take it out'
complete -c fishctl -n "__fish_fishctl_using_subcommand help; and not __fish_seen_subcommand_from apply get describe deallocate delete create maintenance logs whoami version completions config diff backup rotate top help" -f -a "logs" -d 'Print the output of an application\'s resource'
complete -c fishctl -n "__fish_fishctl_using_subcommand help; and not __fish_seen_subcommand_from apply get describe deallocate delete create maintenance logs whoami version completions config diff backup rotate top help" -f -a "whoami" -d 'Show the user the current context authenticates as'
complete -c fishctl -n "__fish_fishctl_using_subcommand help; and not __fish_seen_subcommand_from apply get describe deallocate delete create maintenance logs whoami version completions config diff backup rotate top help" -f -a "version" -d 'Print the fishctl version'
complete -c fishctl -n "__fish_fishctl_using_subcommand help; and not __fish_seen_subcommand_from apply get describe deallocate delete create maintenance logs whoami version completions config diff backup rotate top help" -f -a "completions" -d 'Print a shell completion script'
complete -c fishctl -n "__fish_fishctl_using_subcommand help; and not __fish_seen_subcommand_from apply get describe deallocate delete create maintenance logs whoami version completions config diff backup rotate top help" -f -a "config" -d 'Show or switch contexts of the config file'
complete -c fishctl -n "__fish_fishctl_using_subcommand help; and not __fish_seen_subcommand_from apply get describe deallocate delete create maintenance logs whoami version completions config diff backup rotate top help" -f -a "diff" -d 'Show what apply would change, as a unified diff (exit 0: none, 1: changes, >1: error)'
complete -c fishctl -n "__fish_fishctl_using_subcommand help; and not __fish_seen_subcommand_from apply get describe deallocate delete create maintenance logs whoami version completions config diff backup rotate top help" -f -a "backup" -d 'Save a consistent backup of the whole store (admin); restore with `fishd restore`'
complete -c fishctl -n "__fish_fishctl_using_subcommand help; and not __fish_seen_subcommand_from apply get describe deallocate delete create maintenance logs whoami version completions config diff backup rotate top help" -f -a "rotate" -d 'Make a new API token for yourself (updates the config file), or for USER as admin'
complete -c fishctl -n "__fish_fishctl_using_subcommand help; and not __fish_seen_subcommand_from apply get describe deallocate delete create maintenance logs whoami version completions config diff backup rotate top help" -f -a "top" -d 'Show capacity used of total, allocated applications and queue per node'
complete -c fishctl -n "__fish_fishctl_using_subcommand help; and not __fish_seen_subcommand_from apply get describe deallocate delete create maintenance logs whoami version completions config diff backup rotate top help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c fishctl -n "__fish_fishctl_using_subcommand help; and __fish_seen_subcommand_from create" -f -a "user" -d 'Create a user and print its API token (shown this once)'
complete -c fishctl -n "__fish_fishctl_using_subcommand help; and __fish_seen_subcommand_from create" -f -a "join-token" -d 'Create a one-time token for a new node to join the cluster (prints it alone)'
complete -c fishctl -n "__fish_fishctl_using_subcommand help; and __fish_seen_subcommand_from config" -f -a "get-contexts" -d 'List the contexts of the config file'
complete -c fishctl -n "__fish_fishctl_using_subcommand help; and __fish_seen_subcommand_from config" -f -a "use-context" -d 'Make a context the current one'
complete -c fishctl -n "__fish_fishctl_using_subcommand help; and __fish_seen_subcommand_from config" -f -a "current-context" -d 'Print the name of the current context'

# Object names from the server where a name goes (fishctl __complete).
complete -c fishctl -f -a '(fishctl __complete -- (commandline -opc)[2..-1] 2>/dev/null)'
