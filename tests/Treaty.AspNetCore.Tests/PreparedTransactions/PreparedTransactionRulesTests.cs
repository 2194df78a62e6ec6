using Treaty.AspNetCore.Barrier;
using Treaty.AspNetCore.PreparedTransactions;
using Action = Treaty.AspNetCore.PreparedTransactions.PreparedTransactionAction;

namespace Treaty.AspNetCore.Tests.PreparedTransactions;

public sealed class PreparedTransactionRulesTests
{
    private static BarrierRecord Row(string op, BarrierOutcome outcome = BarrierOutcome.Applied) => new(op, outcome);

    [Fact]
    public void Prepare_FirstDelivery_Prepares_ADuplicateWhilePreparedReplaysTheKeptAnswer()
    {
        PreparedTransactionRules.Decide("prepare", [], prepared: false).ShouldBe(Action.RunPrepare);
        PreparedTransactionRules.Decide("prepare", [], prepared: true).ShouldBe(Action.ReplayPrepared);
    }

    [Fact]
    public void Prepare_AfterItsRollback_IsSkipped_AfterARecordedAnswer_IsReplayed()
    {
        PreparedTransactionRules.Decide("prepare", [Row("rollback", BarrierOutcome.NullCompensation)], false).ShouldBe(Action.SkipHanging);
        PreparedTransactionRules.Decide("prepare", [Row("prepare", BarrierOutcome.Failed)], false).ShouldBe(Action.ReplayStored);
        PreparedTransactionRules.Decide("prepare", [Row("prepare"), Row("commit")], false).ShouldBe(Action.ReplayStored);
    }

    [Fact]
    public void Commit_OfAPreparedTransaction_CommitsIt_ACommittedOneNotYetRecordedIsFinished()
    {
        PreparedTransactionRules.Decide("commit", [], prepared: true).ShouldBe(Action.CommitPrepared);

        // COMMIT PREPARED ran, then the process died before recording it: the prepare's own row,
        // written inside the prepared transaction, is now visible.
        PreparedTransactionRules.Decide("commit", [Row("prepare")], prepared: false).ShouldBe(Action.FinishCommit);
        PreparedTransactionRules.Decide("commit", [Row("prepare"), Row("commit")], false).ShouldBe(Action.ReplayStored);
    }

    [Fact]
    public void Commit_WithNothingPrepared_OrAfterARollback_IsAConflict()
    {
        PreparedTransactionRules.Decide("commit", [], prepared: false).ShouldBe(Action.Conflict);
        PreparedTransactionRules.Decide("commit", [Row("prepare", BarrierOutcome.Failed)], false).ShouldBe(Action.Conflict);
        PreparedTransactionRules.Decide("commit", [Row("prepare"), Row("rollback")], false).ShouldBe(Action.Conflict);
        PreparedTransactionRules.Decide("commit", [Row("rollback", BarrierOutcome.NullCompensation)], false).ShouldBe(Action.Conflict);
    }

    [Fact]
    public void Rollback_OfAPreparedTransaction_RollsItBack_WithNothingPreparedIsNull()
    {
        PreparedTransactionRules.Decide("rollback", [], prepared: true).ShouldBe(Action.RollbackPrepared);
        PreparedTransactionRules.Decide("rollback", [], prepared: false).ShouldBe(Action.NullRollback);
        PreparedTransactionRules.Decide("rollback", [Row("prepare", BarrierOutcome.Failed)], false).ShouldBe(Action.NullRollback);
        PreparedTransactionRules.Decide("rollback", [Row("prepare"), Row("rollback")], false).ShouldBe(Action.ReplayStored);
    }

    [Fact]
    public void Rollback_OfACommittedBranch_IsAConflict_EvenBeforeTheCommitWasRecorded()
    {
        PreparedTransactionRules.Decide("rollback", [Row("prepare"), Row("commit")], false).ShouldBe(Action.Conflict);
        PreparedTransactionRules.Decide("rollback", [Row("prepare")], prepared: false).ShouldBe(Action.Conflict);
    }

    [Fact]
    public void TransactionName_IsShort_Stable_AndDistinctPerDatabaseGidAndBranch()
    {
        var name = PreparedTransactionRules.TransactionName("payment", "g-1", "b1");

        name.Length.ShouldBe(47);
        name.ShouldStartWith("treaty_");
        PreparedTransactionRules.TransactionName("payment", "g-1", "b1").ShouldBe(name);
        PreparedTransactionRules.TransactionName("inventory", "g-1", "b1").ShouldNotBe(name);
        PreparedTransactionRules.TransactionName("payment", "g-1b", "1").ShouldNotBe(name);
        PreparedTransactionRules.TransactionName("payment", new string('g', 256), new string('b', 256)).Length.ShouldBe(47);
        PreparedTransactionRules.Literal(name).ShouldBe("'" + name + "'");
    }

    [Theory]
    [InlineData("treaty_x'; DROP TABLE treaty_barrier; --")]
    [InlineData("other_0123456789abcdef0123456789abcdef01234567")]
    [InlineData("treaty_0123456789ABCDEF0123456789abcdef01234567")]
    public void Literal_RefusesAnythingButAKitName(string name)
    {
        Should.Throw<ArgumentException>(() => PreparedTransactionRules.Literal(name));
    }
}
