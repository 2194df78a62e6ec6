using System.CommandLine;
using Spectre.Console;
using Treaty.Simulation;
using Treaty.Simulation.Harness;

namespace Treaty.Cli;

/// <summary>
/// <c>treaty simulate --seed N</c>: one run of the deterministic simulation (the same run as
/// <c>TREATY_SIM_SEED=N dotnet test tests/Treaty.Simulation.Tests --filter Seeds_Keep</c>), its
/// trace, its summary and whether every invariant held.
/// </summary>
internal static class SimulateCommand
{
    public static Command Create()
    {
        var seed = new Option<int>("--seed") { Description = "The seed: the whole run is a function of it", Required = true };
        var mode = new Option<string>("--mode")
        {
            Description = "normal (every protocol and fault), partition (3PC under partitions), choreography (the choreographed checkout: the messaging kit under a faulty broker and crashes) or multi (three coordinator instances on one store under leases: skewed clocks, pauses longer than a lease, crashes)",
            DefaultValueFactory = _ => "normal",
        };
        mode.AcceptOnlyFromAmong("normal", "partition", "choreography", "multi");
        var variant = new Option<string?>("--variant") { Description = "Run a known-bad variant instead of the correct system (the names are in docs/testing.md)" };
        var gid = new Option<string?>("--gid") { Description = "Print only this transaction's story (its decisions, its participants', the partitions and crashes), repeated calls folded" };
        var command = new Command("simulate", "Run one seed of the deterministic simulation and print its trace") { seed, mode, variant, gid };
        command.SetAction(parse => Run(CliConsole.Out(parse), parse.GetValue(seed), parse.GetValue(mode)!, parse.GetValue(variant), parse.GetValue(gid)));
        return command;
    }

    /// <summary>Runs one seed in the normal or the partition mode and prints it.</summary>
    internal static int Run(IAnsiConsole console, int seed, bool partition, string? variant, string? gid) =>
        Run(console, seed, partition ? SimMode.Partition : SimMode.Normal, variant, gid);

    /// <summary>Runs one seed in the mode named as <c>--mode</c> names it (normal, partition, choreography, multi) and prints it.</summary>
    internal static int Run(IAnsiConsole console, int seed, string mode, string? variant, string? gid) =>
        Run(console, seed, mode switch
        {
            "partition" => SimMode.Partition,
            "choreography" => SimMode.Choreography,
            "multi" => SimMode.MultiCoordinator,
            _ => SimMode.Normal,
        }, variant, gid);

    /// <summary>Runs one seed and prints it; 0 when every invariant held, 1 otherwise, 2 for an unknown variant.</summary>
    private static int Run(IAnsiConsole console, int seed, SimMode mode, string? variant, string? gid)
    {
        SimVariant broken;
        try
        {
            broken = variant is null ? SimVariant.None : SimVariants.Parse(variant);
        }
        catch (ArgumentException ex)
        {
            console.MarkupLineInterpolated($"[red]--variant[/]: {ex.Message}");
            return 2;
        }

        // A choreography variant breaks the choreography mode, a lease variant the multi-coordinator
        // mode: each runs there whatever --mode says.
        var home = SimVariants.ModeFor(broken);
        var result = SimulationRun.Execute(new SimOptions(seed, broken, home is SimMode.Choreography or SimMode.MultiCoordinator ? home : mode, KeepFullTrace: true));
        var trace = gid is null
            ? result.FullTrace
            : ThreePhasePartitionStory.Condense([.. result.FullTrace.Where(line => ThreePhasePartitionStory.Shows(line, gid))]);

        // Trace lines as they are, unwrapped, to be read, grepped and compared with a replay's.
        var writer = console.Profile.Out.Writer;
        foreach (var line in trace)
        {
            writer.WriteLine(line);
        }

        writer.WriteLine();
        writer.WriteLine(result.Summary);
        writer.WriteLine("the same run as: " + result.Replay);
        foreach (var mixed in result.Mixed)
        {
            writer.WriteLine($"{mixed.Gid} ({Treaty.Core.Model.ProtocolNames.ToWire(mixed.Protocol)}): committed at {string.Join(", ", mixed.Committed)}, not at {string.Join(", ", mixed.NotCommitted)}");
        }

        if (result.Ok)
        {
            console.MarkupLineInterpolated($"[green]seed {result.Seed}: every invariant holds[/]");
            return 0;
        }

        console.MarkupLineInterpolated($"[red]seed {result.Seed}: {result.Violations.Count} violation(s)[/]");
        foreach (var violation in result.Violations)
        {
            writer.WriteLine("  " + violation);
        }

        return 1;
    }
}
