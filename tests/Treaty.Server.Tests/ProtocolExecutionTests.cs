using System.Net;
using System.Text.Json.Nodes;
using Treaty.Client;
using Treaty.Server.Tests.Support;

namespace Treaty.Server.Tests;

/// <summary>
/// TCC, 2PC, 3PC and the two-phase message through /api/v1 on real Kestrel against a real
/// participant: every path the coordinator can take, seen from the calls the participant received.
/// </summary>
public sealed class ProtocolExecutionTests(ServerFixture fixture) : IClassFixture<ServerFixture>
{
    private static readonly string[] TccOps = ["try", "confirm", "cancel"];
    private static readonly string[] TwoPhaseOps = ["prepare", "commit", "rollback"];
    private static readonly string[] ThreePhaseOps = ["canCommit", "preCommit", "doCommit", "abort"];
    private static readonly JsonObject Fast = Json.Retry(2, 10, 100);

    private readonly Participant _participant = fixture.Participant;
    private readonly HttpClient _http = fixture.Http;

    private string Base(string gid, string branch) => _participant.Url($"{gid}/{branch}");

    private JsonObject[] Branches(string gid, string[] ops, params string[] names) =>
        [.. names.Select(n => Json.Branch(n, Base(gid, n), ops, Fast))];

    private async Task<TransactionViewAndEvents> RunAsync(JsonObject body, string until = "?wait=20s")
    {
        using var response = await Api.SubmitAsync(_http, body, until);
        response.StatusCode.ShouldBeOneOf([HttpStatusCode.OK, HttpStatusCode.Accepted], await response.Content.ReadAsStringAsync());
        var view = await Api.ReadViewAsync(response);
        if (!view.IsTerminal())
        {
            view = await Api.WaitUntilAsync(_http, view.Gid, v => v.IsTerminal(), "terminal");
        }

        return new(view, (await Api.EventsAsync(_http, view.Gid)).Events);
    }

    [Fact]
    public async Task Tcc_EveryTrySucceeds_ConfirmsEveryBranchAfterTheLastTry()
    {
        var gid = Api.NewGid("tcc-ok");

        var (view, events) = await RunAsync(Json.Transaction("tcc", gid, Branches(gid, TccOps, "payment", "stock")));

        view.Status.ShouldBe("committed");
        view.Phase.ShouldBe("confirm");
        view.Decision.ShouldBe("commit");
        view.Branches.Select(b => b.Status).ShouldBe(["confirmed", "confirmed"]);
        var lastTry = _participant.CallsUnder(gid).Where(c => c.Op == "try").Max(c => c.CompletedSeq);
        foreach (var branch in new[] { "payment", "stock" })
        {
            _participant.EffectsOn($"{gid}/{branch}/try").ShouldBe(1);
            var confirm = _participant.CallsTo($"{gid}/{branch}/confirm").ShouldHaveSingleItem();
            confirm.Seq.ShouldBeGreaterThan(lastTry); // no confirm before every try succeeded
            confirm.IdempotencyKey.ShouldBe($"{gid}/{branch}/confirm");
            _participant.CallsTo($"{gid}/{branch}/cancel").ShouldBeEmpty();
        }

        events.Select(e => e.Kind).ShouldContain("committing");
    }

    [Fact]
    public async Task Tcc_ATryFails_CancelsTheReservedBranchesButNotTheFailedOne()
    {
        var gid = Api.NewGid("tcc-no");
        _participant.Always($"{gid}/stock/try", 409);

        var (view, _) = await RunAsync(Json.Transaction("tcc", gid, Branches(gid, TccOps, "payment", "stock")));

        view.Status.ShouldBe("aborted");
        view.Decision.ShouldBe("abort");
        view.Reason.ShouldNotBeNull().ShouldStartWith("stock.try failed");
        view.Branch("payment").Status.ShouldBe("cancelled");
        view.Branch("stock").Status.ShouldBe("failed");
        _participant.EffectsOn($"{gid}/payment/cancel").ShouldBe(1);
        _participant.CallsTo($"{gid}/stock/cancel").ShouldBeEmpty();
        _participant.CallsUnder(gid).ShouldNotContain(c => c.Op == "confirm");
    }

    [Fact]
    public async Task Tcc_ATryNeverAnswers_IsCancelledToo()
    {
        var gid = Api.NewGid("tcc-slow");
        _participant.Delay($"{gid}/stock/try", TimeSpan.FromSeconds(2));
        var branches = new[]
        {
            Json.Branch("payment", Base(gid, "payment"), TccOps, Fast),
            Json.Branch("stock", Base(gid, "stock"), TccOps, Fast, timeoutMs: 200),
        };

        var (view, _) = await RunAsync(Json.Transaction("tcc", gid, branches));

        view.Status.ShouldBe("aborted");
        view.Op("stock", "try").Attempts.ShouldBe(2);
        view.Op("stock", "try").Status.ShouldBe("exhausted");
        // Its outcome stayed unknown, so it may have reserved: cancelled like the other one.
        _participant.CallsTo($"{gid}/stock/cancel").ShouldNotBeEmpty();
        _participant.CallsTo($"{gid}/payment/cancel").ShouldNotBeEmpty();
    }

    [Fact]
    public async Task Tcc_ConfirmUnavailable_IsRetriedWithTheSameKeyUntilItSucceeds()
    {
        var gid = Api.NewGid("tcc-retry");
        _participant.FailTimes($"{gid}/payment/confirm", 2, 503);
        var branches = new[] { Json.Branch("payment", Base(gid, "payment"), TccOps, Json.Retry(5, 10, 50)) };

        var (view, _) = await RunAsync(Json.Transaction("tcc", gid, branches));

        view.Status.ShouldBe("committed");
        var confirms = _participant.CallsTo($"{gid}/payment/confirm");
        confirms.Select(c => c.Status).ShouldBe([503, 503, 200]);
        confirms.Select(c => c.IdempotencyKey).Distinct().ShouldBe([$"{gid}/payment/confirm"]);
    }

    [Fact]
    public async Task TwoPhase_EveryVoteYes_CommitsEveryBranchAfterTheDecision()
    {
        var gid = Api.NewGid("2pc-ok");

        var (view, events) = await RunAsync(Json.Transaction("2pc", gid, Branches(gid, TwoPhaseOps, "payment", "stock")));

        view.Status.ShouldBe("committed");
        view.Decision.ShouldBe("commit");
        view.Branches.Select(b => (b.Status, b.Vote)).ShouldBe([("committed", "yes"), ("committed", "yes")]);
        var lastVote = _participant.CallsUnder(gid).Where(c => c.Op == "prepare").Max(c => c.CompletedSeq);
        _participant.CallsUnder(gid).Where(c => c.Op == "commit").ShouldAllBe(c => c.Seq > lastVote);
        _participant.CallsUnder(gid).ShouldNotContain(c => c.Op == "rollback");

        // The timeline: both votes, then the decision, then the commits.
        var kinds = events.Select(e => e.Kind).ToList();
        events.Where(e => e.Kind == "vote").Select(e => (e.Branch, e.Detail)).OrderBy(v => v.Branch).ShouldBe([("payment", "yes"), ("stock", "yes")]);
        var decision = kinds.IndexOf("committing");
        decision.ShouldBeGreaterThan(kinds.LastIndexOf("vote"));
        var decisionSeq = events[decision].Sequence;
        events.Where(e => e is { Kind: "attempt-started", Op: "commit" }).ShouldAllBe(e => e.Sequence > decisionSeq);
    }

    [Fact]
    public async Task TwoPhase_ANoVote_AbortsWithoutWaitingForTheRollbacks()
    {
        var gid = Api.NewGid("2pc-no");
        // The NO comes a moment later, so that the YES vote is in when the coordinator decides.
        _participant.Script($"{gid}/stock/prepare", [], new Reply(409, TimeSpan.FromMilliseconds(500)));
        var rollback = _participant.Hold($"{gid}/payment/rollback");
        try
        {
            var (view, events) = await RunAsync(Json.Transaction("2pc", gid, Branches(gid, TwoPhaseOps, "payment", "stock")));

            // Presumed abort: aborted while the YES voter's rollback is still unanswered.
            view.Status.ShouldBe("aborted");
            view.Decision.ShouldBe("abort");
            view.Phase.ShouldBe("rollback");
            view.Reason.ShouldNotBeNull().ShouldStartWith("stock.prepare failed");
            view.Branch("payment").Vote.ShouldBe("yes");
            view.Branch("payment").Status.ShouldBe("rollback-sent");
            view.Branch("stock").Vote.ShouldBe("no");
            events.ShouldContain(e => e.Kind == "notified" && e.Branch == "payment" && e.Op == "rollback");
            await Eventually.Until(() => _participant.CallsTo($"{gid}/payment/rollback").Count == 1, "the rollback reached the YES voter");
        }
        finally
        {
            rollback.Open();
        }

        await Eventually.Until(() => _participant.Applied($"{gid}/payment/rollback"), "the rollback applied");
        _participant.CallsTo($"{gid}/stock/rollback").ShouldBeEmpty(); // a NO voter prepared nothing
        _participant.CallsUnder(gid).ShouldNotContain(c => c.Op == "commit");
    }

    [Fact]
    public async Task TwoPhase_APrepareThatNeverAnswers_IsANoAndTheOthersAreReleased()
    {
        var gid = Api.NewGid("2pc-slow");
        _participant.Delay($"{gid}/stock/prepare", TimeSpan.FromSeconds(2));
        var branches = new[]
        {
            Json.Branch("payment", Base(gid, "payment"), TwoPhaseOps, Fast),
            Json.Branch("stock", Base(gid, "stock"), TwoPhaseOps, Json.Retry(1, 10, 100), timeoutMs: 200),
        };

        var (view, events) = await RunAsync(Json.Transaction("2pc", gid, branches));

        view.Status.ShouldBe("aborted");
        view.Branch("stock").Vote.ShouldBe("no");
        events.ShouldContain(e => e.Kind == "vote" && e.Branch == "stock" && e.Detail!.StartsWith("no (no answer)"));
        await Eventually.Until(() => _participant.Applied($"{gid}/payment/rollback"), "the YES voter's locks released");
        await Eventually.Until(() => _participant.CallsTo($"{gid}/stock/rollback").Count > 0, "the silent one told to roll back too");
    }

    [Fact]
    public async Task ThreePhase_EveryVoteAndAcknowledgement_CommitsInThreeOrderedRounds()
    {
        var gid = Api.NewGid("3pc-ok");

        var (view, _) = await RunAsync(Json.Transaction("3pc", gid, Branches(gid, ThreePhaseOps, "payment", "stock")));

        view.Status.ShouldBe("committed");
        view.Branches.Select(b => (b.Status, b.Vote)).ShouldBe([("committed", "yes"), ("committed", "yes")]);
        var calls = _participant.CallsUnder(gid);
        var votesDone = calls.Where(c => c.Op == "canCommit").Max(c => c.CompletedSeq);
        var acksDone = calls.Where(c => c.Op == "preCommit").Max(c => c.CompletedSeq);
        calls.Where(c => c.Op == "preCommit").ShouldAllBe(c => c.Seq > votesDone);
        calls.Where(c => c.Op == "doCommit").ShouldAllBe(c => c.Seq > acksDone);
        calls.Count(c => c.Op == "doCommit").ShouldBe(2);
        calls.ShouldNotContain(c => c.Op == "abort");
    }

    [Fact]
    public async Task ThreePhase_APreCommitNeverAcknowledged_AbortsEveryone()
    {
        var gid = Api.NewGid("3pc-noack");
        _participant.Always($"{gid}/stock/preCommit", 503);

        var (view, _) = await RunAsync(Json.Transaction("3pc", gid, Branches(gid, ThreePhaseOps, "payment", "stock")));

        view.Status.ShouldBe("aborted");
        view.Reason.ShouldNotBeNull().ShouldStartWith("stock.preCommit ran out of attempts");
        view.Branch("payment").Status.ShouldBe("aborted");
        _participant.EffectsOn($"{gid}/payment/abort").ShouldBe(1);
        _participant.EffectsOn($"{gid}/stock/abort").ShouldBe(1);
        _participant.CallsUnder(gid).ShouldNotContain(c => c.Op == "doCommit");
    }

    [Fact]
    public async Task ThreePhase_ANoVote_AbortsTheYesVoterOnly()
    {
        var gid = Api.NewGid("3pc-no");
        _participant.Always($"{gid}/stock/canCommit", 409);

        var (view, _) = await RunAsync(Json.Transaction("3pc", gid, Branches(gid, ThreePhaseOps, "payment", "stock")));

        view.Status.ShouldBe("aborted");
        _participant.EffectsOn($"{gid}/payment/abort").ShouldBe(1);
        _participant.CallsTo($"{gid}/stock/abort").ShouldBeEmpty();
        _participant.CallsUnder(gid).ShouldNotContain(c => c.Op == "preCommit");
    }

    private JsonObject Message(string gid, long timeoutMs = 60_000, params string[] names) =>
        Json.Transaction("msg", gid, [.. names.Select(n => Json.Branch(n, Base(gid, n), ["action"], Fast))], new JsonObject
        {
            ["queryPrepared"] = _participant.Url($"{gid}/sender/query"),
            ["timeoutMs"] = timeoutMs,
            ["retry"] = Json.Retry(3, 20, 100),
        });

    [Fact]
    public async Task Message_Registered_DeliversNothingUntilTheSenderSubmits()
    {
        var gid = Api.NewGid("msg-ok");
        using (var registered = await Api.SubmitAsync(_http, Message(gid, 60_000, "points", "mail")))
        {
            registered.StatusCode.ShouldBe(HttpStatusCode.Accepted);
            var view = await Api.ReadViewAsync(registered);
            view.Status.ShouldBe("prepared");
            view.Phase.ShouldBe("prepared");
            view.Ops.ShouldNotBeNull()["queryPrepared"].Attempts.ShouldBe(0);
        }

        _participant.CallsUnder(gid).ShouldBeEmpty();

        using var submitted = await Api.PostAsync(_http, $"{Api.Transactions}/{gid}/submit?wait=20s", "");
        submitted.StatusCode.ShouldBe(HttpStatusCode.OK, await submitted.Content.ReadAsStringAsync());
        var done = await Api.ReadViewAsync(submitted);

        done.Status.ShouldBe("committed");
        done.Branches.Select(b => b.Status).ShouldBe(["delivered", "delivered"]);
        _participant.EffectsOn($"{gid}/points/action").ShouldBe(1);
        _participant.EffectsOn($"{gid}/mail/action").ShouldBe(1);
        _participant.CallsTo($"{gid}/sender/query").ShouldBeEmpty();

        // A repeated submit is harmless and answers the message as it stands.
        using var again = await Api.PostAsync(_http, $"{Api.Transactions}/{gid}/submit", "");
        again.StatusCode.ShouldBe(HttpStatusCode.OK);
        _participant.CallsTo($"{gid}/points/action").Count.ShouldBe(1);
    }

    [Fact]
    public async Task Message_NeverSubmitted_QueryPreparedCommitted_Delivers()
    {
        var gid = Api.NewGid("msg-q200");
        using (await Api.SubmitAsync(_http, Message(gid, 200, "points")))
        {
        }

        var view = await Api.WaitForStatusAsync(_http, gid, "committed");

        var query = _participant.CallsTo($"{gid}/sender/query").ShouldHaveSingleItem();
        query.Op.ShouldBe("queryPrepared");
        query.Branch.ShouldBeNull();
        query.Gid.ShouldBe(gid);
        query.IdempotencyKey.ShouldBe($"{gid}/queryPrepared");
        view.Ops.ShouldNotBeNull()["queryPrepared"].Status.ShouldBe("succeeded");
        _participant.EffectsOn($"{gid}/points/action").ShouldBe(1);
    }

    [Fact]
    public async Task Message_NeverSubmitted_QueryPreparedRolledBack_AbortsAndDeliversNothing()
    {
        var gid = Api.NewGid("msg-q409");
        _participant.Always($"{gid}/sender/query", 409);
        using (await Api.SubmitAsync(_http, Message(gid, 200, "points")))
        {
        }

        var view = await Api.WaitForStatusAsync(_http, gid, "aborted");

        view.Reason.ShouldNotBeNull().ShouldStartWith("queryPrepared: the sender rolled back");
        _participant.CallsUnder($"{gid}/points").ShouldBeEmpty();
        using var late = await Api.PostAsync(_http, $"{Api.Transactions}/{gid}/submit", "");
        (await Api.ReadProblemAsync(late, HttpStatusCode.Conflict)).Type.ShouldEndWith("invalid-state");
    }

    [Fact]
    public async Task Message_QueryPreparedUnavailable_AsksAgainUntilItAnswers()
    {
        var gid = Api.NewGid("msg-q503");
        _participant.FailTimes($"{gid}/sender/query", 4, 503);
        using (await Api.SubmitAsync(_http, Message(gid, 200, "points")))
        {
        }

        // Three attempts in the budget, then stuck, still asking at the capped delay.
        var stuck = await Api.WaitUntilAsync(_http, gid, v => v.Stuck, "stuck on queryPrepared");
        stuck.Status.ShouldBe("prepared");
        stuck.StuckOn.ShouldNotBeNull().Op.ShouldBe("queryPrepared");
        stuck.StuckOn.Branch.ShouldBeNull();

        var view = await Api.WaitForStatusAsync(_http, gid, "committed");
        _participant.CallsTo($"{gid}/sender/query").Select(c => c.Status).ShouldBe([503, 503, 503, 503, 200]);
        view.Stuck.ShouldBeFalse();
        _participant.EffectsOn($"{gid}/points/action").ShouldBe(1);
    }

    [Fact]
    public async Task Submit_OfUnknownOrNonMessageTransaction_IsAProblem()
    {
        using var unknown = await Api.PostAsync(_http, $"{Api.Transactions}/no-such-gid/submit", "");
        await Api.ReadProblemAsync(unknown, HttpStatusCode.NotFound);

        var gid = Api.NewGid("not-msg");
        await RunAsync(Json.Transaction("tcc", gid, Branches(gid, TccOps, "payment")));
        using var saga = await Api.PostAsync(_http, $"{Api.Transactions}/{gid}/submit", "");
        (await Api.ReadProblemAsync(saga, HttpStatusCode.Conflict)).Detail.ShouldNotBeNull().ShouldContain("only a two-phase message");
    }

    [Fact]
    public async Task Abort_OfAPreparedMessage_AsksTheSender_RolledBackAborts_CommittedDelivers()
    {
        var rolledBack = Api.NewGid("msg-abort");
        _participant.Always($"{rolledBack}/sender/query", 409);
        using (await Api.SubmitAsync(_http, Message(rolledBack, 60_000, "points")))
        {
        }

        using (var accepted = await Api.PostAsync(_http, $"{Api.Transactions}/{rolledBack}/abort", """{"reason":"never mind"}"""))
        {
            accepted.StatusCode.ShouldBe(HttpStatusCode.OK);
        }

        await Api.WaitForStatusAsync(_http, rolledBack, "aborted");
        _participant.CallsTo($"{rolledBack}/sender/query").ShouldHaveSingleItem(); // asked at once, not after the 60 s timeout
        _participant.CallsUnder($"{rolledBack}/points").ShouldBeEmpty();

        // The sender committed meanwhile: its answer wins over the operator's abort.
        var committed = Api.NewGid("msg-abort-late");
        using (await Api.SubmitAsync(_http, Message(committed, 60_000, "points")))
        {
        }

        using (await Api.PostAsync(_http, $"{Api.Transactions}/{committed}/abort", ""))
        {
        }

        await Api.WaitForStatusAsync(_http, committed, "committed");
        _participant.EffectsOn($"{committed}/points/action").ShouldBe(1);
    }

    [Fact]
    public async Task Abort_OfADeliveringMessage_IsRefused()
    {
        var delivering = Api.NewGid("msg-noabort");
        _participant.Always($"{delivering}/points/action", 503);
        using (await Api.SubmitAsync(_http, Message(delivering, 60_000, "points")))
        {
        }

        using (await Api.PostAsync(_http, $"{Api.Transactions}/{delivering}/submit", ""))
        {
        }

        using var refused = await Api.PostAsync(_http, $"{Api.Transactions}/{delivering}/abort", "");
        await Api.ReadProblemAsync(refused, HttpStatusCode.Conflict);
        _participant.Recover($"{delivering}/points/action");
        await Api.WaitForStatusAsync(_http, delivering, "committed");
    }

    private sealed record TransactionViewAndEvents(Core.Contracts.TransactionView View, IReadOnlyList<Core.Contracts.EventView> Events);
}
