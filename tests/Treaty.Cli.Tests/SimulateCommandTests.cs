using Spectre.Console;

namespace Treaty.Cli.Tests;

public sealed class SimulateCommandTests
{
    [Fact]
    public void Simulate_CorrectSystem_PrintsTheTraceAndExitsZero()
    {
        var (code, output) = Simulate(42, partition: false, variant: null, gid: null);

        code.ShouldBe(0, output);
        output.ShouldStartWith("00000.000 sim       seed 42 (correct, Normal)", customMessage: output);
        output.ShouldContain("the same run as: TREATY_SIM_SEED=42 dotnet test tests/Treaty.Simulation.Tests --filter Seeds_Keep", customMessage: output);
        output.ShouldContain("seed 42: every invariant holds", customMessage: output);
    }

    [Fact]
    public void Simulate_PartitionSeedWithAGid_PrintsThatTransactionsStoryAndItsViolations()
    {
        var (code, output) = Simulate(6, partition: true, variant: null, gid: "tx2");

        code.ShouldBe(1, output);
        output.ShouldContain("PARTITION: payment cut off from the coordinator", customMessage: output);
        output.ShouldContain("tx2 (3pc): committed at payment, not at order, inventory", customMessage: output);
        output.ShouldContain("(×", customMessage: output); // the coordinator's refused abort, folded
        output.ShouldNotContain(" tx1 ", customMessage: output);
    }

    [Fact]
    public void Simulate_ChoreographyMode_PrintsTheServicesBrokerAndCoordinator_AndExitsZero()
    {
        // Any seed shows a run; which faults a seed draws changes whenever the world draws one more
        // number, so the trace is checked for a service crash of any kind, not a particular one.
        var (code, output) = Simulate(1, "choreography", variant: null);

        code.ShouldBe(0, output);
        output.ShouldStartWith("00000.000 sim       seed 1 (choreography, correct)", customMessage: output);
        output.ShouldContain(" broker    took order.created ", customMessage: output);
        output.ShouldContain(": duplicate, dropped by the inbox", customMessage: output);
        output.ShouldContain(" CRASH after ", customMessage: output);
        output.ShouldContain(" committed: event order.order.confirmed", customMessage: output);
        output.ShouldContain("the same run as: TREATY_SIM_SEED=1 TREATY_SIM_VARIANT=choreography dotnet test tests/Treaty.Simulation.Tests --filter Seeds_Keep", customMessage: output);
        output.ShouldContain("seed 1: every invariant holds", customMessage: output);
    }

    [Fact]
    public void Simulate_ChoreographyVariant_RunsInTheChoreographyMode_AndPrintsItsViolations()
    {
        var (code, output) = Simulate(0, "normal", variant: "chor-no-inbox");

        code.ShouldBe(1, output);
        output.ShouldContain("exactly once — debited 2 times", customMessage: output);
        output.ShouldContain("TREATY_SIM_SEED=0 TREATY_SIM_VARIANT=chor-no-inbox dotnet test", customMessage: output);
    }

    [Fact]
    public void Simulate_MultiMode_PrintsTheInstancesTheirPausesAndFencedWrites_AndExitsZero()
    {
        // Seed 18: two instances freeze mid-call and wake up after others took their transactions over.
        var (code, output) = Simulate(18, "multi", variant: null);

        code.ShouldBe(0, output);
        output.ShouldStartWith("00000.000 sim       seed 18 (correct, MultiCoordinator)", customMessage: output);
        output.ShouldContain(" coord-a   start (coord-a, lease 2.0s, wall clock ", customMessage: output);
        output.ShouldContain(" PAUSE (coord-", customMessage: output);
        output.ShouldContain(" write FENCED ", customMessage: output);
        output.ShouldContain(": LOST ", customMessage: output);
        output.ShouldContain(" fenced writes", customMessage: output);
        output.ShouldContain("the same run as: TREATY_SIM_SEED=18 TREATY_SIM_VARIANT=multi dotnet test tests/Treaty.Simulation.Tests --filter Seeds_Keep", customMessage: output);
        output.ShouldContain("seed 18: every invariant holds", customMessage: output);
    }

    [Fact]
    public void Simulate_LeaseVariant_RunsInTheMultiMode_AndPrintsItsViolations()
    {
        var (code, output) = Simulate(19, "normal", variant: "store-ignores-fence");

        code.ShouldBe(1, output);
        output.ShouldContain("ownership: tx3: durable write by coord-a at epoch 1 while the lease is coord-c's at epoch 2", customMessage: output);
        output.ShouldContain("TREATY_SIM_SEED=19 TREATY_SIM_VARIANT=store-ignores-fence dotnet test", customMessage: output);
    }

    [Fact]
    public void Simulate_UnknownVariant_ExitsTwoAndNamesTheKnownOnes()
    {
        var (code, output) = Simulate(1, partition: false, variant: "no-such-bug", gid: null);

        code.ShouldBe(2);
        output.ShouldContain("2pc-resume-voting", customMessage: output);
    }

    private static (int Code, string Output) Simulate(int seed, bool partition, string? variant, string? gid) =>
        Simulate(seed, partition ? "partition" : "normal", variant, gid);

    private static (int Code, string Output) Simulate(int seed, string mode, string? variant, string? gid = null)
    {
        var text = new StringWriter();
        var console = AnsiConsole.Create(new AnsiConsoleSettings
        {
            Out = new AnsiConsoleOutput(text),
            ColorSystem = ColorSystemSupport.NoColors,
            Interactive = InteractionSupport.No,
        });
        console.Profile.Width = 400;
        var code = SimulateCommand.Run(console, seed, mode, variant, gid);
        return (code, text.ToString());
    }
}
