using FsCheck;
using FsCheck.Fluent;
using Treaty.AspNetCore.InDoubt;

namespace Treaty.AspNetCore.Tests.InDoubt;

public sealed class InDoubtRulesTests
{
    [Theory]
    [InlineData("prepare", "Prepared")]
    [InlineData("canCommit", "Voted")]
    [InlineData("preCommit", "PreCommitted")]
    public void StageAfter_AVote_IsItsStage(string op, string stageName)
    {
        var stage = Enum.Parse<PreparedStage>(stageName);
        InDoubtRules.StageAfter(op).ShouldBe(stage);
        InDoubtRules.StageFromColumn(InDoubtRules.ToColumn(stage)).ShouldBe(stage);
    }

    [Theory]
    [InlineData("action")]
    [InlineData("try")]
    [InlineData("confirm")]
    [InlineData("commit")]
    [InlineData("abort")]
    public void StageAfter_AnOpThatIsNoVote_IsNull(string op)
    {
        InDoubtRules.StageAfter(op).ShouldBeNull();
    }

    [Theory]
    [InlineData("Prepared", "Commit", "Commit")]
    [InlineData("Prepared", "Abort", "Abort")]
    [InlineData("Prepared", "Undecided", "Wait")]
    [InlineData("Prepared", "Unreachable", "Wait")]
    [InlineData("Prepared", "UnknownTransaction", "Abort")]
    [InlineData("Voted", "Commit", "Commit")]
    [InlineData("Voted", "Abort", "Abort")]
    [InlineData("Voted", "Undecided", "Wait")]
    [InlineData("Voted", "Unreachable", "Abort")]
    [InlineData("Voted", "UnknownTransaction", "Abort")]
    [InlineData("PreCommitted", "Commit", "Commit")]
    [InlineData("PreCommitted", "Abort", "Abort")]
    [InlineData("PreCommitted", "Undecided", "Wait")]
    [InlineData("PreCommitted", "Unreachable", "Commit")]
    [InlineData("PreCommitted", "UnknownTransaction", "Commit")]
    public void Decide_EveryStageAndAnswer(string stage, string answer, string expected)
    {
        InDoubtRules.Decide(Enum.Parse<PreparedStage>(stage), Enum.Parse<CoordinatorAnswer>(answer)).ShouldBe(Enum.Parse<InDoubtAction>(expected));
    }

    [Fact]
    public void Decide_TwoPhase_NeverCommitsWithoutTheCoordinatorsCommit()
    {
        foreach (var answer in Enum.GetValues<CoordinatorAnswer>().Where(a => a != CoordinatorAnswer.Commit))
        {
            InDoubtRules.Decide(PreparedStage.Prepared, answer).ShouldNotBe(InDoubtAction.Commit, answer.ToString());
        }
    }

    [Theory]
    [InlineData("Prepared", "Commit", "commit")]
    [InlineData("Prepared", "Abort", "rollback")]
    [InlineData("Voted", "Commit", "doCommit")]
    [InlineData("Voted", "Abort", "abort")]
    [InlineData("PreCommitted", "Commit", "doCommit")]
    [InlineData("PreCommitted", "Abort", "abort")]
    public void OperationFor_IsTheOutcomeOpOfTheProtocol(string stage, string action, string op)
    {
        InDoubtRules.OperationFor(Enum.Parse<PreparedStage>(stage), Enum.Parse<InDoubtAction>(action)).ShouldBe(op);
        InDoubtRules.Resolves(op).ShouldBeTrue();
    }

    [Theory]
    [InlineData("running", null, "Undecided")]
    [InlineData("pending", null, "Undecided")]
    [InlineData("running", "commit", "Commit")]
    [InlineData("committed", null, "Commit")]
    [InlineData("aborting", "abort", "Abort")]
    [InlineData("aborted", null, "Abort")]
    public void FromView_ReadsTheDecisionThenTheTerminalStatus(string status, string? decision, string expected)
    {
        InDoubtRules.FromView(status, decision).ShouldBe(Enum.Parse<CoordinatorAnswer>(expected));
    }

    [Theory]
    [InlineData(200, false, null)]
    [InlineData(404, true, "UnknownTransaction")]
    [InlineData(404, false, "Unreachable")]
    [InlineData(401, false, "Unreachable")]
    [InlineData(500, false, "Unreachable")]
    [InlineData(503, false, "Unreachable")]
    public void FromStatusCode_OnlyTheCoordinatorsOwn404MeansNoRecord(int status, bool treatyNotFound, string? expected)
    {
        InDoubtRules.FromStatusCode(status, treatyNotFound).ShouldBe(expected is null ? null : Enum.Parse<CoordinatorAnswer>(expected));
    }

    [Fact]
    public void StillApplies_OnlyAtTheStageItWasDecidedAt()
    {
        InDoubtRules.StillApplies(PreparedStage.Voted, PreparedStage.Voted).ShouldBeTrue();
        InDoubtRules.StillApplies(PreparedStage.Voted, PreparedStage.PreCommitted).ShouldBeFalse();
        InDoubtRules.StillApplies(PreparedStage.Prepared, null).ShouldBeFalse();
    }

    [Fact]
    public void NextCheckDelay_DoublesFromTheFirst_UpToTheCap()
    {
        var first = TimeSpan.FromSeconds(5);
        var max = TimeSpan.FromMinutes(1);

        Enumerable.Range(0, 6).Select(c => InDoubtRules.NextCheckDelay(c, first, max)).ShouldBe(
            [TimeSpan.FromSeconds(5), TimeSpan.FromSeconds(10), TimeSpan.FromSeconds(20), TimeSpan.FromSeconds(40), max, max]);
        InDoubtRules.NextCheckDelay(int.MaxValue, first, max).ShouldBe(max);
    }

    [Fact]
    public void NextCheckDelay_IsPositive_Monotonic_AndCapped()
    {
        Check.One(Config.QuickThrowOnFailure.WithMaxTest(500), Prop.ForAll(
            Gen.Choose(0, 10_000).ToArbitrary(),
            Gen.Choose(1, 100_000).ToArbitrary(),
            Gen.Choose(0, 10_000_000).ToArbitrary(),
            (checks, firstMs, extraMs) =>
            {
                var first = TimeSpan.FromMilliseconds(firstMs);
                var max = first + TimeSpan.FromMilliseconds(extraMs);
                var delay = InDoubtRules.NextCheckDelay(checks, first, max);
                var next = InDoubtRules.NextCheckDelay(checks + 1, first, max);
                return delay >= first && delay <= max && next >= delay;
            }));
    }
}
