using Treaty.AspNetCore.Barrier;

namespace Treaty.AspNetCore.Tests.Barrier;

public sealed class BarrierRulesTests
{
    private static BarrierRecord Row(string op, BarrierOutcome outcome = BarrierOutcome.Applied) => new(op, outcome);

    [Theory]
    [InlineData("action")]
    [InlineData("try")]
    [InlineData("prepare")]
    [InlineData("canCommit")]
    [InlineData("preCommit")]
    [InlineData("confirm")]
    [InlineData("commit")]
    [InlineData("doCommit")]
    [InlineData("compensate")]
    [InlineData("cancel")]
    [InlineData("rollback")]
    [InlineData("abort")]
    public void Decide_FirstDeliveryOfAnOpWithNothingRecorded_RunsOrIsANullCompensation(string op)
    {
        var expected = BarrierRules.KindOf(op) == BarrierOpKind.Compensation ? BarrierDecision.NullCompensation : BarrierDecision.RunHandler;

        BarrierRules.Decide([], op).ShouldBe(expected);
    }

    [Theory]
    [InlineData("Applied")]
    [InlineData("Failed")]
    [InlineData("NullCompensation")]
    [InlineData("SkippedHanging")]
    public void Decide_AnyRecordedOp_IsReplayed(string outcomeName)
    {
        var outcome = Enum.Parse<BarrierOutcome>(outcomeName);

        BarrierRules.Decide([Row("action", outcome)], "action").ShouldBe(BarrierDecision.ReplayStored);
        BarrierRules.Decide([Row("abort", outcome)], "abort").ShouldBe(BarrierDecision.ReplayStored);
    }

    [Theory]
    [InlineData("compensate", "action")]
    [InlineData("cancel", "try")]
    [InlineData("rollback", "prepare")]
    [InlineData("abort", "canCommit")]
    [InlineData("abort", "preCommit")]
    public void Decide_CompensationAfterAnAppliedForwardOp_RunsTheHandler(string compensation, string forward)
    {
        BarrierRules.Decide([Row(forward)], compensation).ShouldBe(BarrierDecision.RunHandler);
    }

    [Theory]
    [InlineData("compensate", "action")]
    [InlineData("cancel", "try")]
    [InlineData("rollback", "prepare")]
    [InlineData("abort", "preCommit")]
    public void Decide_CompensationAfterARefusedForwardOp_IsANullCompensation(string compensation, string forward)
    {
        BarrierRules.Decide([Row(forward, BarrierOutcome.Failed)], compensation).ShouldBe(BarrierDecision.NullCompensation);
    }

    [Fact]
    public void Decide_CompensationAfterAnotherProtocolsForwardOp_IsANullCompensation()
    {
        BarrierRules.Decide([Row("try")], "compensate").ShouldBe(BarrierDecision.NullCompensation);
    }

    [Theory]
    [InlineData("action", "compensate")]
    [InlineData("try", "cancel")]
    [InlineData("prepare", "rollback")]
    [InlineData("canCommit", "abort")]
    [InlineData("preCommit", "abort")]
    public void Decide_ForwardOpAfterItsCompensation_IsSkipped(string forward, string compensation)
    {
        BarrierRules.Decide([Row(compensation, BarrierOutcome.NullCompensation)], forward).ShouldBe(BarrierDecision.SkipHanging);
    }

    [Fact]
    public void Decide_PreCommitAfterCanCommit_Runs_AndAbortAfterBoth_Runs()
    {
        BarrierRules.Decide([Row("canCommit")], "preCommit").ShouldBe(BarrierDecision.RunHandler);
        BarrierRules.Decide([Row("canCommit"), Row("preCommit")], "abort").ShouldBe(BarrierDecision.RunHandler);
        BarrierRules.Decide([Row("canCommit"), Row("abort")], "preCommit").ShouldBe(BarrierDecision.SkipHanging);
    }

    [Theory]
    [InlineData("RunHandler", 200, "Applied")]
    [InlineData("RunHandler", 201, "Applied")]
    [InlineData("RunHandler", 409, "Failed")]
    [InlineData("NullCompensation", 200, "NullCompensation")]
    [InlineData("SkipHanging", 409, "SkippedHanging")]
    public void OutcomeOf_MapsDecisionAndStatus(string decision, int status, string expectedName)
    {
        var expected = Enum.Parse<BarrierOutcome>(expectedName);
        var outcome = BarrierRules.OutcomeOf(Enum.Parse<BarrierDecision>(decision), status);

        outcome.ShouldBe(expected);
        BarrierRules.FromColumn(BarrierRules.ToColumn(outcome)).ShouldBe(outcome);
    }

    [Fact]
    public void KnownOps_AreExactlyTheOpsWithAKind()
    {
        BarrierRules.KnownOps.ShouldAllBe(op => BarrierRules.IsKnown(op));
        BarrierRules.IsKnown("Action").ShouldBeFalse();
        BarrierRules.IsKnown("refund").ShouldBeFalse();
    }

    [Theory]
    [InlineData(399)]
    [InlineData(408)]
    [InlineData(425)]
    [InlineData(429)]
    [InlineData(500)]
    public void Fail_WithAStatusTheCoordinatorRetries_Throws(int status)
    {
        Should.Throw<ArgumentOutOfRangeException>(() => BranchResult.Fail(status, "https://x/y", "t"));
    }

    [Fact]
    public void LockKey_DependsOnGidAndBranch_Unambiguously()
    {
        BarrierSql.LockKey("ab", "c").ShouldNotBe(BarrierSql.LockKey("a", "bc"));
        BarrierSql.LockKey("g", "b").ShouldBe(BarrierSql.LockKey("g", "b"));
    }

    [Theory]
    [InlineData("confirm", "cancel", "try")]
    [InlineData("commit", "rollback", "prepare")]
    [InlineData("doCommit", "abort", "canCommit")]
    public void Decide_FinalOpAfterTheOppositeOutcome_IsAConflict(string final, string compensation, string forward)
    {
        BarrierRules.Decide([Row(forward), Row(compensation)], final).ShouldBe(BarrierDecision.Conflict);
        BarrierRules.Decide([Row(compensation, BarrierOutcome.NullCompensation)], final).ShouldBe(BarrierDecision.Conflict);
    }

    [Theory]
    [InlineData("cancel", "confirm", "try")]
    [InlineData("rollback", "commit", "prepare")]
    [InlineData("abort", "doCommit", "canCommit")]
    public void Decide_CompensationAfterTheOppositeOutcome_IsAConflict(string compensation, string final, string forward)
    {
        // The 3PC case: a participant past preCommit committed alone (termination rule) while the
        // coordinator, cut off, aborted. Undoing a committed branch would not restore atomicity.
        BarrierRules.Decide([Row(forward), Row(final)], compensation).ShouldBe(BarrierDecision.Conflict);
    }

    [Fact]
    public void Decide_ADuplicateOutcome_IsStillAReplay_NotAConflict()
    {
        BarrierRules.Decide([Row("canCommit"), Row("doCommit")], "doCommit").ShouldBe(BarrierDecision.ReplayStored);
        BarrierRules.Decide([Row("prepare"), Row("rollback")], "rollback").ShouldBe(BarrierDecision.ReplayStored);
    }

    [Theory]
    [InlineData("action")]
    [InlineData("compensate")]
    [InlineData("try")]
    [InlineData("prepare")]
    [InlineData("canCommit")]
    [InlineData("preCommit")]
    public void OppositeOutcomeOf_IsNullForOpsThatDoNotEndABranch(string op)
    {
        BarrierRules.OppositeOutcomeOf(op).ShouldBeNull();
    }
}
