using System.Net;
using System.Text.Json.Nodes;
using Treaty.Server.Tests.Support;
using Xunit.Abstractions;

namespace Treaty.Server.Tests;

/// <summary>
/// The coordinator (<c>treaty serve</c>, a separate process) SIGKILLed at the moments that matter for
/// the commit protocols; a new process on the same data directory finishes, and every participant
/// ends with the same outcome.
/// </summary>
public sealed class ProtocolCrashTests(ParticipantFixture fixture, ITestOutputHelper output) : IClassFixture<ParticipantFixture>
{
    private static readonly string[] TwoPhaseOps = ["prepare", "commit", "rollback"];
    private static readonly string[] Branches = ["payment", "stock"];
    private readonly Participant _participant = fixture.Participant;

    private JsonObject TwoPhase(string gid) =>
        Json.Transaction("2pc", gid, [.. Branches.Select(b => Json.Branch(b, _participant.Url($"{gid}/{b}"), TwoPhaseOps, Json.Retry(3, 50, 200)))]);

    [Fact]
    public async Task TwoPhase_CoordinatorKilledAfterEveryVote_RestartPresumesAbort_BothRollBack()
    {
        var gid = Api.NewGid("2pc-kill-votes");
        var held = Branches.Select(b => _participant.Hold($"{gid}/{b}/prepare")).ToList();
        await using var coordinator = new CoordinatorProcess(output);
        try
        {
            using var http = await coordinator.StartAsync();
            using (var submitted = await Api.SubmitAsync(http, TwoPhase(gid)))
            {
                submitted.StatusCode.ShouldBe(HttpStatusCode.Accepted, await submitted.Content.ReadAsStringAsync());
            }

            await Eventually.Until(() => Branches.All(b => _participant.CallsTo($"{gid}/{b}/prepare").Count == 1), "both prepares reached the participants");
            coordinator.Kill();
        }
        finally
        {
            held.ForEach(g => g.Open()); // both vote YES after the coordinator died: their answers are lost
        }

        await Eventually.Until(() => Branches.All(b => _participant.Applied($"{gid}/{b}/prepare")), "both participants prepared");
        using (var http = await coordinator.StartAsync())
        {
            var view = await Api.WaitForStatusAsync(http, gid, "aborted");
            view.Reason.ShouldBe("presumed abort: the coordinator restarted before deciding");
            view.Decision.ShouldBe("abort");
        }

        foreach (var branch in Branches)
        {
            await Eventually.Until(() => _participant.Applied($"{gid}/{branch}/rollback"), $"{branch} rolled back");
            _participant.CallsTo($"{gid}/{branch}/commit").ShouldBeEmpty();
        }
    }

    [Fact]
    public async Task TwoPhase_CoordinatorKilledAfterTheDecision_RestartCommitsBoth()
    {
        var gid = Api.NewGid("2pc-kill-decided");
        var held = _participant.Hold($"{gid}/stock/commit");
        await using var coordinator = new CoordinatorProcess(output);
        try
        {
            using var http = await coordinator.StartAsync();
            using (var submitted = await Api.SubmitAsync(http, TwoPhase(gid)))
            {
                submitted.StatusCode.ShouldBe(HttpStatusCode.Accepted, await submitted.Content.ReadAsStringAsync());
            }

            await Eventually.Until(() => _participant.CallsTo($"{gid}/stock/commit").Count == 1, "the decision was taken and a commit sent");
            var decided = (await Api.GetAsync(http, gid)).ShouldNotBeNull();
            decided.Decision.ShouldBe("commit");
            coordinator.Kill();
        }
        finally
        {
            held.Open();
        }

        using (var http = await coordinator.StartAsync())
        {
            var view = await Api.WaitForStatusAsync(http, gid, "committed");
            view.Branches.Select(b => b.Status).ShouldBe(["committed", "committed"]);
            (await Api.EventsAsync(http, gid)).Events.ShouldContain(e => e.Kind == "resumed");
        }

        foreach (var branch in Branches)
        {
            _participant.EffectsOn($"{gid}/{branch}/commit").ShouldBe(1, branch);
            _participant.CallsTo($"{gid}/{branch}/rollback").ShouldBeEmpty();
        }
    }

    [Fact]
    public async Task Message_CoordinatorKilledWhilePrepared_TheRegistrationSurvives_AndQueryPreparedDelivers()
    {
        var gid = Api.NewGid("msg-kill");
        var body = Json.Transaction("msg", gid, [Json.Branch("points", _participant.Url($"{gid}/points"), ["action"])], new JsonObject
        {
            ["queryPrepared"] = _participant.Url($"{gid}/sender/query"),
            ["timeoutMs"] = 1_000,
        });
        await using var coordinator = new CoordinatorProcess(output);
        using (var http = await coordinator.StartAsync())
        {
            using var registered = await Api.SubmitAsync(http, body);
            (await Api.ReadViewAsync(registered)).Status.ShouldBe("prepared");
            coordinator.Kill();
        }

        using (var http = await coordinator.StartAsync())
        {
            await Api.WaitForStatusAsync(http, gid, "committed");
        }

        _participant.CallsTo($"{gid}/sender/query").Count.ShouldBe(1);
        _participant.EffectsOn($"{gid}/points/action").ShouldBe(1);
    }

    [Fact]
    public async Task ThreePhase_CoordinatorKilledAfterEveryPreCommit_ParticipantsCommitOnTheirOwn()
    {
        var gid = Api.NewGid("3pc-kill");
        await using var coordinator = new CoordinatorProcess(output);
        await using var stock = await KitParticipant.StartAsync(new Uri(coordinator.Url), after: TimeSpan.FromSeconds(1));
        await using var payment = await KitParticipant.StartAsync(new Uri(coordinator.Url), after: TimeSpan.FromSeconds(1));
        var answers = new Gate();
        stock.HoldPreCommitAnswers = answers;
        payment.HoldPreCommitAnswers = answers;
        // The kit serves every operation of a branch at one path.
        JsonObject Branch(string name, string url) => new()
        {
            ["name"] = name, ["canCommit"] = url, ["preCommit"] = url, ["doCommit"] = url, ["abort"] = url, ["retry"] = Json.Retry(3, 50, 200),
        };
        var body = Json.Transaction("3pc", gid, [Branch("stock", stock.Url), Branch("payment", payment.Url)]);

        using (var http = await coordinator.StartAsync())
        {
            using (var submitted = await Api.SubmitAsync(http, body))
            {
                submitted.StatusCode.ShouldBe(HttpStatusCode.Accepted, await submitted.Content.ReadAsStringAsync());
            }

            await Eventually.Until(
                () => stock.StateAsync(gid, "stock").Result == "pre-committed" && payment.StateAsync(gid, "payment").Result == "pre-committed",
                "both participants acknowledged preCommit (answers held)");
            coordinator.Kill(); // it never hears the acknowledgements, and never comes back
        }

        answers.Open();

        // Each participant times out, cannot reach the coordinator, and applies 3PC's termination
        // rule: after preCommit, commit.
        await Eventually.Until(
            () => stock.StateAsync(gid, "stock").Result == "committed" && payment.StateAsync(gid, "payment").Result == "committed",
            "both participants committed on their own", TimeSpan.FromSeconds(30));
    }
}
