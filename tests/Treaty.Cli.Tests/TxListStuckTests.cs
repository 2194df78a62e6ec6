using System.Text.Json;
using Treaty.Cli.Tests.Support;
using Treaty.Testing;

namespace Treaty.Cli.Tests;

/// <summary><c>treaty tx list --stuck</c> lists the transactions waiting for an operator and nothing else.</summary>
public sealed class TxListStuckTests : IAsyncLifetime
{
    private InProcessCoordinator _coordinator = null!;
    private TinyParticipant _participant = null!;

    private string Server => _coordinator.BaseAddress.AbsoluteUri;

    public async Task InitializeAsync()
    {
        _coordinator = await InProcessCoordinator.StartAsync(prefix: "treaty-cli-stuck");
        _participant = await TinyParticipant.StartAsync();
    }

    public async Task DisposeAsync()
    {
        await _participant.DisposeAsync();
        await _coordinator.DisposeAsync();
    }

    [Fact]
    public async Task TxListStuck_TableAndJson_ListTheStuckSagaAndNotTheCommittedOne_PlainListHasBoth()
    {
        var stuck = $"cli-stuck-{Guid.NewGuid():N}";
        var committed = $"cli-committed-{Guid.NewGuid():N}";
        await Sagas.StuckAsync(_coordinator.Client, _participant, stuck);
        await Sagas.CommittedAsync(_coordinator.Client, _participant, committed);

        var table = await CliRun.TxAsync("tx", "list", "--stuck", "--server", Server);
        var json = await CliRun.TxAsync("tx", "list", "--stuck", "-o", "json", "--server", Server);
        var all = await CliRun.TxAsync("tx", "list", "--server", Server);

        table.ExitCode.ShouldBe(0, table.ToString());
        table.Out.Split('\n').ShouldContain(line => line.Contains(stuck) && line.Contains("aborting") && line.Contains("yes"), table.ToString());
        table.Out.ShouldNotContain(committed, customMessage: table.ToString());
        table.Out.ShouldContain("1 transaction(s)", customMessage: table.ToString());

        json.ExitCode.ShouldBe(0, json.ToString());
        using (var document = JsonDocument.Parse(json.Out))
        {
            var items = document.RootElement.GetProperty("items").EnumerateArray().ToList();
            items.Select(i => i.GetProperty("gid").GetString()).ShouldBe([stuck], json.Out);
            items.Single().GetProperty("stuck").GetBoolean().ShouldBeTrue();
        }

        all.ExitCode.ShouldBe(0, all.ToString());
        all.Out.Split('\n').ShouldContain(line => line.Contains(stuck) && line.Contains("yes"), all.ToString());
        all.Out.Split('\n').ShouldContain(line => line.Contains(committed) && line.Contains("committed"), all.ToString());
        all.Out.ShouldContain("2 transaction(s)", customMessage: all.ToString());
    }
}
