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
    private static readonly string[] ThreePhaseOps = ["canCommit", "preCommit", "doCommit", "abort"];
    private readonly Participant _participant = fixture.Participant;

    /// <summary>A branch of a kit participant, which serves every operation at one path.</summary>
    private static JsonObject KitBranch(string name, string url, string[] ops)
    {
        var branch = new JsonObject { ["name"] = name, ["retry"] = Json.Retry(3, 50, 200) };
        foreach (var op in ops)
        {
            branch[op] = url;
        }

        return branch;
    }

    [Fact]
    public async Task TwoPhase_CoordinatorKilledAfterEveryVote_RestartPresumesAbort_BothRollBack()
    {
        var gid = Api.NewGid("2pc-kill-votes");
        await using var coordinator = new CoordinatorProcess(output);
        await using var stock = await KitParticipant.StartAsync(new Uri(coordinator.Url), after: TimeSpan.FromMinutes(5));
        await using var payment = await KitParticipant.StartAsync(new Uri(coordinator.Url), after: TimeSpan.FromMinutes(5));
        var votes = new Gate();
        stock.HoldAnswers("prepare", votes);
        payment.HoldAnswers("prepare", votes);
        using (var http = await coordinator.StartAsync())
        {
            using (var submitted = await Api.SubmitAsync(http, Json.Transaction("2pc", gid, [KitBranch("stock", stock.Url, TwoPhaseOps), KitBranch("payment", payment.Url, TwoPhaseOps)])))
            {
                submitted.StatusCode.ShouldBe(HttpStatusCode.Accepted, await submitted.Content.ReadAsStringAsync());
            }

            // Both participants voted YES (prepared, durably) before the coordinator heard a vote.
            await Eventually.Until(() => stock.StateAsync(gid, "stock").Result == "voted" && payment.StateAsync(gid, "payment").Result == "voted", "both prepared");
            coordinator.Kill();
        }

        votes.Open();
        using (var http = await coordinator.StartAsync())
        {
            var view = await Api.WaitForStatusAsync(http, gid, "aborted");
            view.Reason.ShouldBe("presumed abort: the coordinator restarted before deciding");
            view.Decision.ShouldBe("abort");
        }

        // The restarted coordinator's rollbacks reach both: the same outcome everywhere.
        await Eventually.Until(() => stock.StateAsync(gid, "stock").Result == "aborted" && payment.StateAsync(gid, "payment").Result == "aborted", "both rolled back");
    }

    [Fact]
    public async Task TwoPhase_CoordinatorKilledAfterTheDecision_RestartCommitsBoth()
    {
        var gid = Api.NewGid("2pc-kill-decided");
        await using var coordinator = new CoordinatorProcess(output);
        await using var stock = await KitParticipant.StartAsync(new Uri(coordinator.Url), after: TimeSpan.FromMinutes(5));
        await using var payment = await KitParticipant.StartAsync(new Uri(coordinator.Url), after: TimeSpan.FromMinutes(5));
        var commits = new Gate();
        stock.HoldAnswers("commit", commits);
        payment.HoldAnswers("commit", commits);
        using (var http = await coordinator.StartAsync())
        {
            using (var submitted = await Api.SubmitAsync(http, Json.Transaction("2pc", gid, [KitBranch("stock", stock.Url, TwoPhaseOps), KitBranch("payment", payment.Url, TwoPhaseOps)])))
            {
                submitted.StatusCode.ShouldBe(HttpStatusCode.Accepted, await submitted.Content.ReadAsStringAsync());
            }

            // The decision is durable (the commits went out); the coordinator dies before any answer.
            await Eventually.Until(() => stock.StateAsync(gid, "stock").Result == "committed", "the decision was taken and a commit applied");
            (await Api.GetAsync(http, gid)).ShouldNotBeNull().Decision.ShouldBe("commit");
            coordinator.Kill();
        }

        commits.Open();
        using (var http = await coordinator.StartAsync())
        {
            var view = await Api.WaitForStatusAsync(http, gid, "committed");
            view.Branches.Select(b => b.Status).ShouldBe(["committed", "committed"]);
            (await Api.EventsAsync(http, gid)).Events.ShouldContain(e => e.Kind == "resumed");
        }

        (await stock.StateAsync(gid, "stock")).ShouldBe("committed");
        (await payment.StateAsync(gid, "payment")).ShouldBe("committed");
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
        stock.HoldAnswers("preCommit", answers);
        payment.HoldAnswers("preCommit", answers);
        var body = Json.Transaction("3pc", gid, [KitBranch("stock", stock.Url, ThreePhaseOps), KitBranch("payment", payment.Url, ThreePhaseOps)]);

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
