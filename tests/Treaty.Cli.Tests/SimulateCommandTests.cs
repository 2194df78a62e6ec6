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
    public void Simulate_UnknownVariant_ExitsTwoAndNamesTheKnownOnes()
    {
        var (code, output) = Simulate(1, partition: false, variant: "no-such-bug", gid: null);

        code.ShouldBe(2);
        output.ShouldContain("2pc-resume-voting", customMessage: output);
    }

    private static (int Code, string Output) Simulate(int seed, bool partition, string? variant, string? gid)
    {
        var text = new StringWriter();
        var console = AnsiConsole.Create(new AnsiConsoleSettings
        {
            Out = new AnsiConsoleOutput(text),
            ColorSystem = ColorSystemSupport.NoColors,
            Interactive = InteractionSupport.No,
        });
        console.Profile.Width = 400;
        var code = SimulateCommand.Run(console, seed, partition, variant, gid);
        return (code, text.ToString());
    }
}
