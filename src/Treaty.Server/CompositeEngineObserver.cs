using Treaty.Core.Engine;
using Treaty.Core.Model;

namespace Treaty.Server;

/// <summary>Hands every engine event to several observers, in order.</summary>
internal sealed class CompositeEngineObserver(params IEngineObserver[] observers) : IEngineObserver
{
    public void Submitted(TransactionState state)
    {
        foreach (var observer in observers)
        {
            observer.Submitted(state);
        }
    }

    public void Persisted(TransactionState state, bool forced)
    {
        foreach (var observer in observers)
        {
            observer.Persisted(state, forced);
        }
    }

    public void BranchCalled(TransactionState state, BranchCall call, BranchOutcome outcome, TimeSpan duration)
    {
        foreach (var observer in observers)
        {
            observer.BranchCalled(state, call, outcome, duration);
        }
    }

    public void Finished(TransactionState state)
    {
        foreach (var observer in observers)
        {
            observer.Finished(state);
        }
    }

    public void Alert(TransactionState state, Alert alert)
    {
        foreach (var observer in observers)
        {
            observer.Alert(state, alert);
        }
    }

    public void Decided(TransactionState previous, TransactionState next)
    {
        foreach (var observer in observers)
        {
            observer.Decided(previous, next);
        }
    }

    public void StuckChanged(TransactionState state, bool stuck)
    {
        foreach (var observer in observers)
        {
            observer.StuckChanged(state, stuck);
        }
    }

    public void Resumed(TransactionState state, long epoch, bool takeOver)
    {
        foreach (var observer in observers)
        {
            observer.Resumed(state, epoch, takeOver);
        }
    }

    public void LeaseLost(string gid, long epoch, bool atRenewal)
    {
        foreach (var observer in observers)
        {
            observer.LeaseLost(gid, epoch, atRenewal);
        }
    }

    public void RenewFailed(int held)
    {
        foreach (var observer in observers)
        {
            observer.RenewFailed(held);
        }
    }
}
